"""``odiag validate DIR``: does the diagnostic predict training?

For each teacher of a finished run (or a chosen subset) and each distillation loss, distil the
student on-policy for a fixed budget, then measure its accuracy on held-out questions of the same
task, disjoint from the diagnosed ones; then ask whether the run's mean alignment ranks the gains.

- **Training questions** are the run's diagnosed questions; **held-out questions** are the task's
  other questions (never one whose prompt was diagnosed), the first ``heldout`` of them.
- **The teacher signal is the one the diagnostic scored**: the teacher model of the teacher file
  (a self-teacher is the frozen, untrained student), reading the exact context ids stored with the
  run's scoring passes (``shards/<question>/score-p<j>-<teacher>.npz``: the same template, shown
  solutions, summaries and artefacts), one of the question's stored contexts per sample. A
  question where the diagnostic skipped the teacher is not trained on for that teacher.
- **Losses** (``algorithms``), per response token of the student's own samples, on the full
  next-token distributions at the run's temperature, mean over tokens (as GKD, Agarwal et al. 2024):
  ``gkd`` reverse KL ``KL(π ‖ π_T)``; ``forward_kl`` ``KL(π_T ‖ π)``; ``jsd`` the generalised
  ``JSD(β)`` with the run's β (SPEC §3). Their names match the rows of ``results.json``.
- **Baselines**: ``drgrpo``, no teacher: Dr. GRPO (Liu et al. 2025), policy gradient on the binary
  reward with the group-mean baseline ``r - mean(r)`` over a prompt's samples, no std scaling,
  summed over tokens and divided by a constant (samples x max_new_tokens), not by each length.
  The **control** does nothing: the untrained student, evaluated with the same draws as every
  trained model of its seed (common random numbers: counter-based sampling gives the same uniforms
  to every model), so a gain is ``accuracy(trained) - accuracy(control)`` question by question. The
  control is also evaluated with fresh draws; that row's "gain" is pure evaluation noise and its
  interval must hold 0.
- **Seeds** change the training draws (prompts, samples, shown contexts) and the evaluation draws.
  Every (pair, seed) result is stored under ``DIR/validation/<settings hash>/`` as soon as it is
  done, so a killed command resumes, and more seeds reuse the earlier ones.

Statistics (:mod:`harness.core.validation`): each gain with a t CI for seeds and held-out
questions both drawn at random (none with one seed); Spearman's ρ between the pairs' mean alignment and their gains, with a
bootstrap CI over seeds, held-out questions and diagnosed questions; the same for incorrect-path
alignment and teacher advantage, and their ρ minus alignment's.

The loop is plain torch, not TRL's ``GKDTrainer``: the teacher reads a different prompt (its own
context) from the student's, which ``GKDTrainer`` (one tokenised prompt for both models) cannot
express without rewriting its batch collation, and JSD/forward KL/reverse KL here are one line each.
Sampling goes through odiag's own hf backend (exact sampling at T, no truncation, seeded draws).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness import __version__
from harness.config import ConfigError, RunConfig, apply_overrides, build, local_path, portable, repeated, to_dict
from harness.errors import NonFiniteLogits
from harness.progress import Callback, Phases
from harness.rundir import RunDir, RunDirError, RunLock, remove_temporaries, write_json
from harness.safeio import excerpt
from harness.seeds import derive_seed
from harness.wording import plural, shell_word

if TYPE_CHECKING:
    from harness.plan import TeacherRef

log = logging.getLogger(__name__)
SCHEMA_VERSION = "odiag.validation/1"
DISTILLATION = ("gkd", "forward_kl", "jsd")  # losses odiag validate trains with (names of results.json rows)
BASELINE, CONTROL, NOISE = "drgrpo", "control", "control_fresh_draws"
PREDICTORS = ("alignment", "alignment_incorrect", "teacher_advantage")


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    """Settings of ``odiag validate`` (``--set key=value``); saved resolved in validation.json."""

    teachers: tuple[str, ...] | None = None  # teachers to distil from (names in the run); None: all of them
    algorithms: tuple[str, ...] = ("gkd", "forward_kl")  # distillation losses: gkd (reverse KL), forward_kl, jsd
    baseline: bool = True  # also train the no-teacher Dr. GRPO baseline
    seeds: int = 3  # training seeds per (teacher, algorithm)
    steps: int = 16  # optimizer steps: the fixed training budget
    prompts_per_step: int = 8  # training questions per step
    samples_per_prompt: int = 4  # student samples per question and step (Dr. GRPO's group)
    learning_rate: float = 1e-4  # AdamW, constant, no weight decay; gradients clipped to norm 1
    heldout: int | None = None  # held-out questions to evaluate on; None: every one the task has left
    eval_samples: int = 16  # samples per held-out question (accuracy = share correct)
    n_boot: int = 2000  # bootstrap replicates of each rank correlation's CI (a gain's is a t interval)
    seed: int = 0  # every draw derives from it
    threads: int | None = 1  # torch CPU threads (one is steadiest on a small shared machine)
    device: str = "auto"  # cpu, cuda, or auto (CUDA when available)


# what --quick changes: one budget that fits the test suite and a 5-minute check on 2 cores
MIN_BOOT = 100
# ceilings far above any useful value: the bootstrap's draws hold n_boot x questions integers
MAX_SETTING = {"n_boot": 100_000, "seeds": 1_000, "steps": 1_000_000, "prompts_per_step": 4096,
               "samples_per_prompt": 4096, "eval_samples": 4096, "heldout": 1_000_000, "threads": 4096}
QUICK = {"seeds": 2, "steps": 8, "prompts_per_step": 6, "eval_samples": 8, "heldout": 24, "n_boot": 1000}
# settings that cannot move a (pair, seed) result: left out of the resume key (threads and device round it
# differently: each stored result records them, and a resume that would mix them is refused, `_same_numerics`)
_NOT_IN_KEY = ("teachers", "algorithms", "baseline", "seeds", "n_boot", "threads", "device")


def resolve_validate_config(quick: bool = False, overrides: Sequence[str] = (), **flags) -> ValidateConfig:
    """Defaults, then the ``--quick`` preset, then ``flags`` (``teachers``, ``seeds``; None is unset),
    then each ``key=value`` override (values parsed as YAML); a key given both ways is refused."""
    data: dict = dict(QUICK) if quick else {}
    given = {k: v for k, v in flags.items() if v is not None}
    data.update(given)
    if twice := [k for k in apply_overrides(data, overrides, "steps=32") if k in given]:
        raise ConfigError(f"odiag validate: --{twice[0]} and --set {twice[0]}=... both set key {twice[0]!r}; give it once")
    cfg = build(ValidateConfig, data, "odiag validate")
    for key in ("seeds", "steps", "prompts_per_step", "samples_per_prompt", "eval_samples"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"odiag validate: key {key!r} must be >= 1, got {getattr(cfg, key)}")
    if cfg.n_boot < MIN_BOOT:  # a percentile interval of a few replicates can exclude its own estimate
        raise ConfigError(f"odiag validate: key 'n_boot' must be >= {MIN_BOOT} (bootstrap replicates of a 95% "
                          f"interval), got {cfg.n_boot}")
    for key, most in MAX_SETTING.items():  # refused now, not after hours of training, when the arrays are made
        if getattr(cfg, key) is not None and getattr(cfg, key) > most:
            raise ConfigError(f"odiag validate: key {key!r} must be at most {most:,}, got {getattr(cfg, key):,}")
    for key in ("heldout", "threads"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"odiag validate: key {key!r} must be >= 1 or null, got {getattr(cfg, key)}")
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"odiag validate: key 'seed' must be >= 0 and < 2**63, got {cfg.seed}")
    if not 0 < cfg.learning_rate <= 1:  # AdamW moves every weight by about the learning rate at each step
        raise ConfigError(f"odiag validate: key 'learning_rate' must be > 0 and <= 1, got {cfg.learning_rate}")
    if unknown := [a for a in cfg.algorithms if a not in DISTILLATION]:
        raise ConfigError(f"odiag validate: unknown algorithm {unknown[0]!r}; choose from {', '.join(DISTILLATION)}")
    if not cfg.algorithms:
        raise ConfigError("odiag validate: key 'algorithms' needs at least one distillation loss")
    if cfg.teachers is not None and not cfg.teachers:
        raise ConfigError("odiag validate: key 'teachers' (--teachers) names no teacher; "
                          "name at least one of the run's, or leave it out for all")
    for key in ("teachers", "algorithms"):  # a pair listed twice would count twice in every correlation
        if (twice := repeated(getattr(cfg, key) or ())) is not None:
            raise ConfigError(f"odiag validate: key {key!r} lists {twice!r} twice; name each once")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(cfg.device)):
        raise ConfigError(f"odiag validate: key 'device' must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if str(cfg.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"odiag validate: key 'device' is {cfg.device!r}, and torch sees no CUDA device here "
                              "(use cpu, or auto)")
    return cfg


# losses ------------------------------------------------------------------------------------------


def token_losses(algorithm: str, logp_student, logp_teacher, beta: float = 0.5):
    """Per-token divergence [B, R] between log-distributions [B, R, V] (SPEC §3's conventions):
    ``gkd`` ``Σ π (log π - log π_T)``; ``forward_kl`` ``Σ π_T (log π_T - log π)``; ``jsd``
    ``β KL(π_T ‖ M) + (1-β) KL(π ‖ M)``, ``M = β π_T + (1-β) π``. Gradients flow into the student only."""
    import torch

    s, t = logp_student, logp_teacher.detach()
    if algorithm == "gkd":
        return (s.exp() * (s - t)).sum(-1)
    if algorithm == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if algorithm == "jsd":
        m = torch.logsumexp(torch.stack([t + np.log(beta), s + np.log1p(-beta)]), dim=0)
        return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    raise ValueError(f"unknown distillation loss {algorithm!r}")


def _response_logprobs(model, prefixes: Sequence[np.ndarray], responses: Sequence[np.ndarray], temperature: float):
    """log-softmax(logits / T) at every response position, [B, R, V], and the mask of real positions [B, R].

    Sequences are right-padded: a causal model's real positions never see the padding after them.
    The head is applied only at response positions (a large vocabulary never meets the prompt).
    """
    import torch

    device = next(model.parameters()).device
    lengths = [len(p) + len(r) for p, r in zip(prefixes, responses, strict=True)]
    ids = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prefixes, responses, strict=True)):
        ids[i, : lengths[i]] = torch.as_tensor(np.concatenate([p, r]))
    width = max(len(r) for r in responses)
    start = torch.tensor([len(p) - 1 for p in prefixes])
    pos = (start[:, None] + torch.arange(width)[None]).clamp(max=ids.shape[1] - 1)
    mask = torch.arange(width)[None] < torch.tensor([len(r) for r in responses])[:, None]
    hidden = model.base_model(input_ids=ids.to(device)).last_hidden_state
    hidden = hidden.gather(1, pos.to(device)[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = model.get_output_embeddings()(hidden).float() / temperature
    return torch.log_softmax(logits, dim=-1), mask.to(device)


# the run being validated -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Teacher:
    """One teacher of the run as training sees it."""

    name: str
    model: object  # a torch module (the frozen student for a self-teacher)
    contexts: dict[str, list[np.ndarray]]  # question id -> the context ids the diagnostic scored (one per path)
    skipped: int  # training questions where the diagnostic skipped this teacher


def _load_model(model_id: str, revision: str | None, dtype: str, device):
    from harness.backends.hf import load_causal_lm

    return load_causal_lm(model_id, revision, dtype).to(device).eval()


def in_float32(model) -> tuple[object, bool]:
    """The student as every arm trains, samples and is evaluated (the control too): in float32, and whether its
    checkpoint's dtype was another. A bfloat16 weight drops each AdamW update below half its spacing: at lr
    1e-4, every weight of magnitude 2^-5 and up, the norms' among them, would never move."""
    import torch

    upcast = next(model.parameters()).dtype != torch.float32
    return model.float(), upcast


def _scored_teacher(root: Path, record: dict | None, name: str) -> TeacherRef:
    """Teacher ``name`` exactly as the run scored it (``config.json``); refused, as ``odiag run`` refuses
    it, when its file is gone or holds another teacher now: training would not match the alignment."""
    from harness.plan import recorded_teacher

    if not isinstance(record, dict) or not {"name", "file", "identity"} <= set(record):
        raise RunDirError(f"{root}/config.json: no valid record of teacher {name!r}; not a run this odiag can validate")
    ref = recorded_teacher(record, str(root), "or leave the teacher out with --teachers")
    if ref.identity != record["identity"]:
        raise ConfigError(f"{root}: teacher {name!r} changed since it was scored ({ref.config.file}: identity "
                          f"{record['identity']} there, {ref.identity} now); restore the file, or rescore it with "
                          f"odiag rescore {shell_word(root)} and validate again")
    return ref


def _stored_contexts(rundir: RunDir, question: dict, teacher: str) -> list[np.ndarray]:
    from harness.plan import slug

    out = []
    for j in range(int(question["paths"])):
        shard = rundir.load(question["id"], f"score-p{j}-{slug(teacher)}")
        if shard is not None and "skip" not in shard:
            out.append(np.asarray(shard["context"], np.int64))
    return out


def per_question_predictors(run_dir: Path, pairs: Sequence[tuple[str, str]], question_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Each predictor's per-question value [P, N] for each (teacher, algorithm) pair, aggregated from
    nodes.parquet exactly as results.json does (SPEC §5): mean over a path's decision points, then over
    a question's paths (its incorrect paths only for ``alignment_incorrect``)."""
    import pyarrow.parquet as pq

    cols = ["question_id", "path_id", "path_correct", "teacher", "algorithm", "alignment", "teacher_advantage"]
    nodes = {k: np.asarray(v) for k, v in pq.read_table(run_dir / "nodes.parquet", columns=cols).to_pydict().items()}
    out = {name: np.full((len(pairs), len(question_ids)), np.nan) for name in PREDICTORS}
    index = {q: i for i, q in enumerate(question_ids)}
    for p, (teacher, algorithm) in enumerate(pairs):
        sel = np.flatnonzero((nodes["teacher"] == teacher) & (nodes["algorithm"] == algorithm))
        paths: dict[tuple[str, int], list[int]] = {}
        for i in sel:
            paths.setdefault((str(nodes["question_id"][i]), int(nodes["path_id"][i])), []).append(i)
        per_question: dict[str, list[tuple[float, float, bool]]] = {}
        for (qid, _), idx in paths.items():
            align = nodes["alignment"][idx].astype(float)
            adv = nodes["teacher_advantage"][idx].astype(float)
            mean = lambda x: float(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else np.nan
            per_question.setdefault(qid, []).append((mean(align), mean(adv), bool(nodes["path_correct"][idx[0]])))
        for qid, values in per_question.items():
            if qid not in index:
                continue
            align, adv, correct = (np.array(c) for c in zip(*values, strict=True))
            for name, x in (("alignment", align), ("teacher_advantage", adv), ("alignment_incorrect", align[~correct])):
                x = x[np.isfinite(x)]
                out[name][p, index[qid]] = x.mean() if x.size else np.nan
    return out


# training and evaluation -------------------------------------------------------------------------


class _Trainer:
    """Everything one validation holds: task, questions, models, settings."""

    def __init__(self, cfg: ValidateConfig, run_cfg: RunConfig, task, train_q, heldout_q, student, device):
        self.cfg, self.run_cfg, self.task = cfg, run_cfg, task
        self.train_q, self.heldout_q = train_q, heldout_q
        self.student, self.device = student, device
        self.max_new = run_cfg.max_new_tokens or task.max_new_tokens

    def _backend(self, model):
        from harness.backends import ModelSpec
        from harness.backends.hf import HFBackend

        return HFBackend.from_model(model, ModelSpec(self.run_cfg.student, self.run_cfg.student_revision, self.run_cfg.dtype))

    def _diverged(self, after: str) -> ConfigError:
        """The refusal of a student whose logits training made NaN or inf (the untrained one's were finite)."""
        return ConfigError(f"odiag validate: the student's logits became NaN or inf after {after} at learning_rate "
                           f"{self.cfg.learning_rate:g}: training diverged; lower it (--set learning_rate=..., default 1e-4)")

    def _request(self, prompt, n, seed):
        from harness.backends import SampleRequest

        return SampleRequest(prompt, n, seed, self.max_new, self.run_cfg.temperature, self.task.stop_ids)

    def evaluate(self, model, key: tuple) -> np.ndarray:
        """Share of correct samples per held-out question; draws seeded by ``key`` and the question id."""

        backend = self._backend(model)
        requests = [self._request(q.prompt_ids, self.cfg.eval_samples, derive_seed(self.cfg.seed, *key, q.id))
                    for q in self.heldout_q]
        try:
            results = backend.sample(requests)
        except NonFiniteLogits:
            if model is self.student:  # untrained (the control): its dtype, not training
                raise
            raise self._diverged(f"its {self.cfg.steps} training steps") from None
        return np.array([np.mean(self.task.rewards(q, r.tokens, r.truncated)) for q, r in zip(self.heldout_q, results, strict=True)])

    def train(self, algorithm: str, teacher: Teacher | None, seed_index: int):
        """A fresh copy of the student after ``steps`` on-policy updates; the loss's mean per step."""
        import torch


        cfg = self.cfg
        model = copy.deepcopy(self.student)
        for p in model.parameters():
            p.requires_grad_(True)
        backend = self._backend(model)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
        usable = [q for q in self.train_q if teacher is None or teacher.contexts.get(q.id)]
        if not usable:
            raise ConfigError(f"teacher {teacher.name!r} was skipped on every diagnosed question: nothing to train on")
        losses = []
        for step in range(cfg.steps):
            # prompts, samples and shown contexts depend on (seed, step) only: pairs share them (CRN)
            rng = np.random.default_rng(derive_seed(cfg.seed, "train", seed_index, step))
            pick = rng.choice(len(usable), cfg.prompts_per_step, replace=len(usable) < cfg.prompts_per_step)
            chosen = [usable[i] for i in pick]
            requests = [self._request(q.prompt_ids, cfg.samples_per_prompt, derive_seed(cfg.seed, "train", seed_index, step, k))
                        for k, q in enumerate(chosen)]
            try:
                results = backend.sample(requests)
            except NonFiniteLogits:
                if step == 0:  # the student as the run read it: its dtype, not the training
                    raise
                raise self._diverged(f"{step} training {plural(step, 'step')}") from None
            prompts, responses, contexts, advantages = [], [], [], []
            for q, res in zip(chosen, results, strict=True):
                rewards = np.asarray(self.task.rewards(q, res.tokens, res.truncated), float)
                for i, ids in enumerate(res.tokens):
                    if len(ids) == 0:
                        continue
                    prompts.append(q.prompt_ids)
                    responses.append(np.asarray(ids, np.int64))
                    advantages.append(rewards[i] - rewards.mean())
                    if teacher is not None:
                        options = teacher.contexts[q.id]
                        contexts.append(options[int(rng.integers(len(options)))])
            model.train()
            logp, mask = _response_logprobs(model, prompts, responses, self.run_cfg.temperature)
            if teacher is None:  # Dr. GRPO
                taken = logp.gather(-1, _padded(responses, mask)[..., None])[..., 0]
                adv = torch.tensor(advantages, dtype=logp.dtype, device=logp.device)
                loss = -(adv[:, None] * taken * mask).sum() / (len(responses) * self.max_new)
            else:
                with torch.no_grad():
                    logp_t, _ = _response_logprobs(teacher.model, contexts, responses, self.run_cfg.temperature)
                per_token = token_losses(algorithm, logp, logp_t, self.run_cfg.jsd_beta)
                loss = (per_token * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.eval()
            losses.append(float(loss.detach()))
        return model, losses


def _padded(responses: Sequence[np.ndarray], mask):
    import torch

    out = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    for i, r in enumerate(responses):
        out[i, : len(r)] = torch.as_tensor(r, device=mask.device)
    return out


# the command -------------------------------------------------------------------------------------


def _key(cfg: ValidateConfig, run_hash: str, upcast: bool = False) -> str:
    """Names the stored trainings of ``cfg`` on a run; ``upcast``: a student whose checkpoint is not float32
    (trained in float32 since trainings were stored under its key alone)."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_KEY}
    if upcast:
        data["student_dtype"] = "float32"
    return hashlib.sha256(json.dumps([run_hash, data], sort_keys=True).encode()).hexdigest()[:12]


def _versions(device) -> dict:
    import scipy
    import torch
    import transformers

    from harness.config import checkout_commit

    return {"odiag": __version__, "git_commit": checkout_commit(), "numpy": np.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device)}


def validate(run_dir: str | Path, cfg: ValidateConfig, on_progress: Callback | None = None) -> dict:
    """Distil, evaluate, correlate; write ``validation.json`` and the figure into ``run_dir``; return the JSON.

    ``on_progress`` receives `harness.progress` events: one phase, "validate", counting the
    trainings (arm x seed) this command runs; those stored by an earlier one are read back, not counted.
    """
    root = Path(run_dir)
    RunDir.finished_results(root)  # what the directory is instead, before anything is taken
    lock = RunLock(root)  # held throughout: a run growing meanwhile would leave a validation of results that are gone
    lock.acquire()
    try:
        remove_temporaries(root)  # what a killed validate (or run) left half-written
        return _validate(root, cfg, on_progress)
    finally:
        lock.release()


@dataclasses.dataclass
class _Run:
    """A finished run as validate reads it, checked before torch loads."""

    results: dict  # its results.json
    config: RunConfig  # its config, the student as a local path where one is
    rundir: RunDir  # read only: the stored scoring shards (checksummed on load)
    teachers: list[str]  # the teachers to distil from
    refs: dict[str, TeacherRef]  # each by the identity the run scored


def _validate(root: Path, cfg: ValidateConfig, on_progress: Callback | None) -> dict:
    """:func:`validate` on a run directory this process holds."""
    from harness.core.validation import rank_correlations

    phases = Phases(on_progress)
    started, cpu_started, load_before = time.monotonic(), time.process_time(), os.getloadavg()
    run = _checked_run(root, cfg)

    import torch  # after the checks: a wrong argument is answered before torch loads

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu" if cfg.device == "auto" else cfg.device)
    task, train_q, heldout_q = _questions(root, run, cfg)
    diagnosed = {q["id"]: q for q in run.results["questions"]}
    student = _load_model(run.config.student, run.config.student_revision, run.config.dtype, device)
    student, upcast = in_float32(student)
    for p in student.parameters():
        p.requires_grad_(False)
    teachers: dict[str, Teacher] = {}
    for name in run.teachers:
        spec = run.refs[name].config
        model = student if spec.is_self else _load_model(spec.model, spec.revision, spec.dtype, device)
        for p in model.parameters():
            p.requires_grad_(False)
        contexts = {q.id: _stored_contexts(run.rundir, diagnosed[q.id], name) for q in train_q}
        teachers[name] = Teacher(name, model, contexts, sum(not c for c in contexts.values()))
    trainer = _Trainer(cfg, run.config, task, train_q, heldout_q, student, device)

    pairs = [(t, a) for t in run.teachers for a in cfg.algorithms]
    arms = [*pairs, *([(None, BASELINE)] if cfg.baseline else []), (None, CONTROL), (None, NOISE)]
    key = _key(cfg, run.results["config_hash"], upcast)
    acc, train_info = _train_arms(root / "validation" / key, arms, run.refs,
                                  teachers, student, trainer, cfg.seeds, phases, _numerics(device))
    control_SQ = np.stack(acc[(None, CONTROL)])
    diff_PSQ = np.stack([np.stack(acc[p]) - control_SQ for p in pairs])
    predictors = per_question_predictors(root, pairs, [q.id for q in train_q])
    correlation = rank_correlations(predictors, diff_PSQ, seed=[cfg.seed, 1], n_boot=cfg.n_boot) if len(pairs) >= 3 else {}
    # within one loss: does alignment rank the teachers (the choice the diagnostic is meant to inform)?
    by_algorithm = {}
    for a in cfg.algorithms:
        idx = [k for k, (_, algorithm) in enumerate(pairs) if algorithm == a]
        if len(idx) >= 3:
            by_algorithm[a] = rank_correlations({n: x[idx] for n, x in predictors.items()}, diff_PSQ[idx],
                                                seed=[cfg.seed, 2], n_boot=cfg.n_boot)
    out = {
        "schema_version": SCHEMA_VERSION,
        "settings": to_dict(cfg),
        "settings_hash": key,
        "run": {"config_hash": run.results["config_hash"], "created_at": run.results.get("created_at"),
                "task": run.results["task"], "student": run.results["student"], "temperature": run.config.temperature,
                "jsd_beta": run.config.jsd_beta},
        "versions": _versions(device),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "questions": {"training": [q.id for q in train_q], "heldout": [q.id for q in heldout_q],
                      "eval_samples": cfg.eval_samples},
        "control_accuracy": {"mean": float(control_SQ.mean()), "per_seed": control_SQ.mean(axis=1).tolist()},
        "rows": _rows(arms, acc, train_info, run, teachers, cfg),
        "correlation": correlation,
        "correlation_by_algorithm": by_algorithm,
        # on a shared machine wall time measures the neighbours too: CPU seconds of this process beside it
        "timing": {"seconds": round(time.monotonic() - started, 1), "cpu_seconds": round(time.process_time() - cpu_started, 1),
                   # wall seconds of every (arm, seed) when it ran, resumed ones included
                   "arm_seconds": round(sum(t["seconds"] for arm in arms for t in train_info[arm]), 1),
                   "threads": torch.get_num_threads(),
                   "device": str(device), "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())},
    }
    from harness.pipeline import json_ready

    out = portable(json_ready(out))
    _write_outputs(root, out)
    return out


def _write_outputs(root: Path, out: dict) -> None:
    """validation.json with its figure (.svg, .png): all written under temporary names first (a full disk leaves the
    earlier validation as it was), then moved into place by renames; the earlier figure goes first, so that a
    rename refused (something else at its name) never leaves it beside these numbers."""
    from harness.leaderboard.figures import staged_figure, validation_figure
    from harness.rundir import move_into_place, staged

    text = json.dumps(out, indent=2, allow_nan=False) + "\n"
    files = {root / "validation.json": staged(root / "validation.json", lambda f: f.write(text), mode="w")}
    try:
        files.update(staged_figure(validation_figure(out), root, "validation"))
        for old in (root / "validation.svg", root / "validation.png"):
            if old.is_file() or old.is_symlink():
                old.unlink()
        move_into_place(files)
    finally:
        for tmp in files.values():
            tmp.unlink(missing_ok=True)


def _checked_run(root: Path, cfg: ValidateConfig) -> _Run:
    """The finished run at ``root`` with what ``cfg`` asks of it, or one line saying why it cannot be validated."""
    results_file = RunDir.finished_results(root)
    RunDir.verify_models(root)  # it trains the student the run scored, and reads the contexts the run stored
    results = json.loads(results_file.read_text(encoding="utf-8"))
    if results.get("schema_version") != "odiag.results/1":
        raise ConfigError(f"{results_file}: schema_version {results.get('schema_version')!r}, odiag validate reads 'odiag.results/1'")
    run_cfg = RunDir.load_config(root)
    if run_cfg.backend != "hf":
        raise ConfigError(f"{root}: odiag validate trains transformers models; this run used backend {run_cfg.backend!r}: "
                          "validate a run made with backend hf (odiag demo makes one)")
    run_cfg = dataclasses.replace(run_cfg, student=local_path(run_cfg.student))
    available = list(results["teacher_info"])
    names = list(cfg.teachers) if cfg.teachers is not None else available
    if unknown := [t for t in names if t not in available]:
        raise ConfigError(f"{root}: no teacher {unknown[0]!r} in this run; its teachers are {', '.join(available)}")
    if not results["counts"].get("decision_points"):
        from harness.report import no_decision_reason

        raise ConfigError(f"{root}: nothing to validate, the run has {no_decision_reason(results)}")
    if unscored := [a for a in cfg.algorithms if a not in run_cfg.algorithms]:
        raise ConfigError(f"{root}: the run did not score {unscored[0]} (its algorithms: {', '.join(run_cfg.algorithms)}); "
                          "choose among them with --set algorithms=[...]")
    aligned = {(r["teacher"], r["algorithm"]) for r in results["teachers"] if (r.get("alignment") or {}).get("mean") is not None}
    if missing := [(t, a) for t in names for a in cfg.algorithms if (t, a) not in aligned]:
        raise ConfigError(f"{root}: teacher {missing[0][0]!r} has no {missing[0][1]} alignment in this run (skipped at "
                          "every decision point); leave it out with --teachers")
    recorded = {t.get("name"): t for t in RunDir.read_saved(root)["teachers"] if isinstance(t, dict)}
    refs = {name: _scored_teacher(root, recorded.get(name), name) for name in names}
    return _Run(results, run_cfg, RunDir(root, plan=None), names, refs)


def _questions(root: Path, run: _Run, cfg: ValidateConfig) -> tuple:
    """The run's task, its diagnosed questions (to train on) and the first ``cfg.heldout`` others (to evaluate
    on), refused where the task or its data changed since the run."""
    from harness.pipeline import changed_question, run_task
    from harness.plan import check_task, task_record

    task = run_task(run.config)
    diagnosed = {q["id"] for q in run.results["questions"]}
    everything = task.questions(None)
    train_q = [q for q in everything if q.id in diagnosed]
    # held-out gains are judged by the task's checker now: the one the run's alignments were made under
    check_task(RunDir.read_saved(root).get("task"), task_record(run.config, task), run.config.task, str(root),
               "diagnose the task anew with odiag run")
    if (changed := changed_question(run.rundir, train_q)) is not None:  # it trains on what the run diagnosed
        raise RunDirError(f"{root}: {changed} (the task's data changed since: data_files, the data set or the chat "
                          "template); restore that data")
    seen = {q.prompt_ids.tobytes() for q in train_q}
    left = [q for q in everything if q.id not in diagnosed and q.prompt_ids.tobytes() not in seen]
    if not left:
        raise ConfigError(f"{root}: task {run.config.task} has {len(everything)} questions and the run diagnosed "
                          f"{len(diagnosed)} of them: none is left to hold out (run the diagnostic with a smaller limit)")
    if cfg.heldout is not None and cfg.heldout > len(left):  # a cap: every question left is held out
        log.warning("odiag validate: heldout %d: task %s leaves %d %s after the %d the run diagnosed; all %d are held out",
                    cfg.heldout, run.config.task, len(left), plural(len(left), "question"), len(diagnosed), len(left))
    heldout_q = left[: cfg.heldout]
    return task, train_q, heldout_q


def _numerics(device) -> dict:
    """What decides how a training rounds: the device, and on a CPU the threads its sums are split over (another
    count adds in another order, and losses drift apart by about 1e-8 per step)."""
    import torch

    if device.type == "cuda":
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(device)}
    return {"device": device.type, "threads": torch.get_num_threads()}


def _same_numerics(stored: dict[Path, dict], numerics: dict, store: Path) -> None:
    """Refuse to add trainings that round differently from those stored (arms stored before odiag recorded
    this are taken as they are)."""
    for path, saved in stored.items():
        then = saved.get("numerics")
        if then is None or then == numerics:
            continue
        where = lambda n: (f"{n['device']} with {n['threads']} {plural(n['threads'], 'thread')}" if "threads" in n
                           else f"{n['device']} ({n.get('gpu')})")
        fix = {"device": then["device"], **({"threads": then["threads"]} if "threads" in then else {})}
        fix = " ".join(f"--set {k}={v}" for k, v in fix.items() if numerics.get(k) != v)
        raise ConfigError(f"odiag validate: {path} was trained on {where(then)}, and this command runs on {where(numerics)}, "
                          f"which rounds differently: its gains would mix the two; resume with {fix or 'the same device'}, "
                          f"or delete {store} to train every arm anew")


def _train_arms(store: Path, arms: Sequence[tuple[str | None, str]], refs: dict, teachers: dict[str, Teacher],
                student, trainer: _Trainer, seeds: int, phases: Phases, numerics: dict) -> tuple[dict, dict]:
    """Held-out accuracies ``[seed][question]`` and training figures per arm: each (arm, seed) trained and
    evaluated once, stored under ``store`` as soon as it is done, read back on a later command, where it was
    trained with the same ``numerics`` (`_numerics`)."""
    from harness.plan import slug

    acc = {arm: [None] * seeds for arm in arms}
    train_info: dict = {arm: [None] * seeds for arm in arms}
    order = [(None, CONTROL), (None, NOISE), *[a for a in arms if a[1] not in (CONTROL, NOISE)]]
    # a teacher by name and identity: another file under the same name is trained anew
    paths = {(arm, s): store / (f"{slug(arm[0])}-{refs[arm[0]].identity}" if arm[0] else "-") / f"{arm[1]}--seed{s}.json"
             for s in range(seeds) for arm in order}
    stored = {path: _stored_arm(path, len(trainer.heldout_q)) for path in paths.values() if path.exists()}
    _same_numerics(stored, numerics, store)
    with phases.phase("validate", unit="trainings") as phase:
        phase.plan(len(paths) - len(stored))  # what a resumed command still trains
        for s in range(seeds):
            for arm in order:
                teacher, algorithm = arm
                path = paths[arm, s]
                if path in stored:
                    saved = stored[path]
                else:
                    t0 = time.monotonic()
                    losses = []
                    if algorithm in (CONTROL, NOISE):
                        model = student
                    else:
                        model, losses = trainer.train(algorithm, teachers.get(teacher), s)
                    key = ("eval-fresh", s) if algorithm == NOISE else ("eval", s)
                    saved = {"teacher": teacher, "algorithm": algorithm, "seed": s,
                             "accuracy": trainer.evaluate(model, key).tolist(), "losses": losses,
                             "seconds": round(time.monotonic() - t0, 2), "numerics": numerics}
                    write_json(path, saved)
                    phase.advance(1)
                acc[arm][s] = np.asarray(saved["accuracy"], float)
                train_info[arm][s] = {"seconds": saved["seconds"], "loss_first": (saved["losses"] or [None])[0],
                                      "loss_last": (saved["losses"] or [None])[-1]}
    return acc, train_info


def _rows(arms: Sequence[tuple[str | None, str]], acc: dict, train_info: dict, run: _Run, teachers: dict[str, Teacher],
          cfg: ValidateConfig) -> list[dict]:
    """One row per arm: held-out accuracy, its gain over the control with a seeds x questions t CI, its training,
    and for a teacher the diagnostic's predictors of that gain."""
    from harness.core.validation import gain_interval

    control_SQ = np.stack(acc[(None, CONTROL)])
    by_pair = {(r["teacher"], r["algorithm"]): r for r in run.results["teachers"]}
    rows = []
    for arm in arms:
        teacher, algorithm = arm
        acc_SQ = np.stack(acc[arm])
        gain = gain_interval(acc_SQ - control_SQ)
        kind = "distillation" if teacher else "baseline" if algorithm == BASELINE else "control"
        row = {"teacher": teacher, "algorithm": algorithm, "kind": kind,
               "accuracy": {"mean": float(acc_SQ.mean()), "per_seed": acc_SQ.mean(axis=1).tolist()},
               "gain": {"mean": gain.mean, "ci95": [gain.lo, gain.hi], "per_seed": (acc_SQ - control_SQ).mean(axis=1).tolist(),
                        "n_cells": gain.n},
               "training": train_info[arm]}
        if teacher:
            diag = by_pair.get((teacher, algorithm), {})
            row.update({p: {"mean": (diag.get(p) or {}).get("mean"), "ci95": (diag.get(p) or {}).get("ci95")} for p in PREDICTORS})
            row["skipped_training_questions"] = teachers[teacher].skipped
        elif algorithm == BASELINE:
            first = run.teachers[0]
            row["alignment"] = {k2: (by_pair.get((first, BASELINE), {}).get("alignment") or {}).get(k2) for k2 in ("mean", "ci95")}
        rows.append(row)
    return rows


def _stored_arm(path: Path, heldout: int) -> dict:
    """A finished (arm, seed) as stored: one line naming the file when it is not one."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        accuracy = np.asarray(saved["accuracy"], float)
        losses, seconds = saved["losses"], saved["seconds"]
        if accuracy.shape != (heldout,) or not np.isfinite(accuracy).all() or not isinstance(losses, list) \
                or not isinstance(seconds, (int, float)):
            raise ValueError(f"{heldout} held-out accuracies, a list of losses and its seconds expected")
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise RunDirError(f"{path}: not a stored validation arm ({excerpt(str(exc), 80)}); delete it and run the same "
                          "command again to train that arm anew") from None
    return saved


def format_report(v: dict) -> str:
    """The per-pair table and the correlations, as ``odiag validate`` prints them."""
    fmt = lambda x: "   n/a" if x is None else f"{x:+.3f}"
    ci = lambda c: "[   n/a,    n/a]" if not c or None in c else f"[{fmt(c[0])}, {fmt(c[1])}]"
    tw = max(22, *(len(r["teacher"] or "") for r in v["rows"]))  # the teacher column holds its longest name
    lines = [f"{'teacher':<{tw}} {'algorithm':<20} {'alignment':>9} {'95% CI':>18} {'gain':>7} {'95% CI':>18} {'accuracy':>8}"]
    for r in v["rows"]:
        a = r.get("alignment") or {}
        lines.append(f"{r['teacher'] or '(none)':<{tw}} {r['algorithm']:<20} {fmt(a.get('mean')):>9} {ci(a.get('ci95')):>18} "
                     f"{fmt(r['gain']['mean']):>7} {ci(r['gain']['ci95']):>18} {r['accuracy']['mean']:>8.3f}")
    heldout, samples, seeds = len(v["questions"]["heldout"]), v["questions"]["eval_samples"], v["settings"]["seeds"]
    lines.append(f"\ncontrol accuracy {v['control_accuracy']['mean']:.3f} on {heldout} held-out {plural(heldout, 'question')} "
                 f"x {samples} {plural(samples, 'sample')} x {seeds} {plural(seeds, 'seed')}")
    if seeds == 1:
        lines.append("no intervals with one seed: training noise cannot be measured from one draw (--seeds 2 or more)")
    for name, c in v["correlation"].items():
        line = f"Spearman(gain, {name}) = {fmt(c['spearman'])} {ci(c['ci95'])} over {c['n_pairs']} pairs"
        if "minus_alignment" in c:
            d = c["minus_alignment"]
            line += f"; minus alignment's: {fmt(d['mean'])} {ci(d['ci95'])} ({d['verdict']})"
        lines.append(line)
    if not v["correlation"]:
        lines.append("fewer than 3 (teacher, algorithm) pairs: no rank correlation")
    for algorithm, corr in v.get("correlation_by_algorithm", {}).items():
        lines.append(f"within {algorithm}: " + "; ".join(
            f"Spearman(gain, {name}) = {fmt(c['spearman'])} {ci(c['ci95'])}" for name, c in corr.items()))
    t = v["timing"]
    lines.append(f"{t['seconds']:.0f} s ({t.get('cpu_seconds', 0):.0f} CPU s) on {t['threads']} {plural(t['threads'], 'thread')}, "
                 f"{t['device']}; load average {t['load_average_before'][0]:.1f} -> {t['load_average_after'][0]:.1f}")
    return "\n".join(lines)


def main_validate(run_dir: str, quick: bool, teachers: str | None, seeds: int | None, overrides: Sequence[str],
                  on_progress: Callback | None = None) -> int:
    """``odiag validate DIR [--teachers a,b] [--quick] [--seeds N] [--set k=v]``."""
    names = tuple(t.strip() for t in teachers.split(",") if t.strip()) if teachers is not None else None
    cfg = resolve_validate_config(quick, overrides, teachers=names, seeds=seeds)
    v = validate(run_dir, cfg, on_progress)
    print(format_report(v))
    print(f"validation: {Path(run_dir) / 'validation.json'}, figure: {Path(run_dir) / 'validation.svg'}")
    return 0
