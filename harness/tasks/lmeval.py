"""Tasks defined as lm-eval task YAMLs (``tasks/odiag_*.yaml``), loaded through lm-eval itself.

The YAML is an ordinary lm-eval ``generate_until`` task: lm-eval's ``TaskManager`` reads it, loads
the data set (from the Hugging Face hub by default, as lm-eval's own ``boolq``, ``mmlu`` and
``aime25`` do) and renders ``doc_to_text`` / ``doc_to_target``. odiag then wraps the rendered text
as one user turn of the student's chat template (``enable_thinking`` from the task, or the
``thinking`` option) and scores responses with :mod:`harness.tasks.scoring`. The limit on response
length is the YAML's ``generation_kwargs.max_gen_toks``; odiag's own options sit under
``metadata.odiag``::

    metadata:
      odiag:
        answer_type: boolean      # boolean, choice or integer (harness.tasks.scoring)
        n_min: 20                 # visits a child needs to enter A(s) (10 for long traces)
        thinking: false           # the chat template's enable_thinking
        shuffle_seed: null        # questions in a seeded order instead of the data set's

``data_files`` points a task at a local JSONL copy of its evaluation split instead of the hub
(``../shared/data`` holds BoolQ, MMLU and AIME 2025 in that form); each YAML's ``process_docs``
maps the local schema onto the hub's, so prompts, targets and question ids are the same.
"""

from __future__ import annotations

import codecs
import contextlib
import difflib
import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harness.config import ConfigError
from harness.modelfiles import is_local_path, loadable
from harness.safeio import excerpt
from harness.tasks import TASKS_DIR, odiag_options
from harness.tasks import CORRECT, TRUNCATED, UNPARSEABLE, WRONG, Question, Skip
from harness.tasks import scoring
from harness.tasks.scoring import Verdict, score
from harness.teachers import (
    STUDENT,
    Artefacts,
    TeacherConfig,
    context_or_skip,
    model_keys,
    models_named,
    placeholder_context,
)

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")  # single-token stops besides the tokenizer's eos


# the files a transformers tokenizer loads from (one is enough): fast, then the slow ones' vocabularies
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.txt")


@functools.lru_cache(maxsize=16)
def load_tokenizer(name: str, revision: str | None = None):
    """``AutoTokenizer`` of a hub id (at ``revision``) or a local model directory."""
    from transformers import AutoTokenizer

    if is_local_path(name) and not Path(name).expanduser().is_dir():
        where = "" if Path(name).expanduser().is_absolute() else f" under {str(Path.cwd())!r}"
        what = "a file, not a directory" if Path(name).expanduser().exists() else f"no such directory{where}"
        raise ConfigError(f"cannot load the tokenizer of {name!r}: {what} (give a local model "
                          "directory or a hub id such as Qwen/Qwen3-8B)")
    if is_local_path(name) and not any((Path(name).expanduser() / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"cannot load the tokenizer of {name!r}: the directory holds none of "
                          f"{', '.join(TOKENIZER_FILES)} (give the directory a model was saved to, tokenizer included)")
    try:
        with quiet_hub_retries():
            return AutoTokenizer.from_pretrained(loadable(name), revision=revision)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"cannot load the tokenizer of {name!r}: {reason}{_offline_hint(name, reason)}") from None


def _offline_hint(name: str, reason: str) -> str:
    """What to do when the hub cannot be reached for ``name``: cache it, or stop waiting for the network."""
    if "couldn't connect" not in reason:
        return ""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return (f" (it is not in the Hugging Face cache: run hf download {name} where there is a network, "
                "or give a local model directory)")
    return (" (without a network, set HF_HUB_OFFLINE=1 to read the Hugging Face cache without waiting on retries, "
            f"after hf download {name} where there is one; or give a local model directory)")


@contextlib.contextmanager
def quiet_hub_retries():
    """huggingface_hub logs a warning for each request it retries; when the load fails anyway the one
    error line says it all, and when a retry succeeds there is nothing to say."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@functools.lru_cache(maxsize=16)
def max_positions(name: str, revision: str | None = None) -> int | None:
    """The model's context length (``max_position_embeddings``); None when it cannot be read."""
    local = Path(name).expanduser() / "config.json"
    try:
        if local.exists():
            config = json.loads(local.read_text(encoding="utf-8"))
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(loadable(name), revision=revision).to_dict()
    except (OSError, ValueError):
        return None
    return config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted (byte-level BPE tokens are strings of these)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def task_names() -> list[str]:
    """The task YAMLs under ``tasks/``."""
    return sorted(p.stem for p in TASKS_DIR.glob("odiag_*.yaml"))


def build_lm_eval_task(name: str, data_files: str | None = None):
    """lm-eval's own ``ConfigurableTask`` for ``tasks/<name>.yaml``, through its ``TaskManager``.

    With ``data_files`` the YAML is loaded as lm-eval reads it and its data source is replaced by
    the local JSONL file (as the evaluation split); nothing else changes.
    """
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if name not in manager.all_subtasks:
        raise ConfigError(f"unknown task {name!r}: available tasks are {', '.join(map(repr, ['synthetic', *task_names()]))} "
                          f"(YAMLs under {TASKS_DIR})")
    if data_files is None:
        with _quiet_custom_dataset_hint():
            return _load(manager, name, name, "the Hugging Face hub",
                         "offline, point it at a local JSONL copy with --set data_files=PATH "
                         "(or set HF_DATASETS_OFFLINE=1 with the data set already in the Hugging Face cache)")
    from lm_eval.tasks._yaml_loader import load_yaml  # the reader TaskManager itself uses (!function resolved)

    cfg = load_yaml(manager.task_index[name].yaml_path, resolve_func=True)
    if cfg.get("custom_dataset") is not None:
        raise ConfigError(f"task {name!r} generates its questions: data_files does not apply")
    path = Path(data_files).expanduser()
    if not path.is_file():
        raise ConfigError(f"data_files: no such file {str(path)!r}")
    split = cfg.get("test_split") or cfg["validation_split"]
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {split: str(path.resolve())}})
    return _load(manager, cfg, name, f"data_files {str(path)!r}", "check that it is JSONL with the hub's fields")


def _load(manager, spec, name: str, source: str, fix: str):
    """``manager.load(spec)``'s task ``name``; a data set that cannot be read is a `ConfigError` naming the source and the fix."""
    import datasets
    import jinja2
    from datasets.exceptions import DatasetGenerationError

    # datasets' "Generating split" and "Map" bars, and its ERROR lines before a failure the one line below
    # says, would sit among odiag's own progress lines (or break --quiet)
    bars, logger = datasets.is_progress_bar_enabled(), logging.getLogger("datasets")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.CRITICAL)
    try:
        with quiet_hub_retries():
            return manager.load(spec)["tasks"][name]
    # the hub unreachable; a file missing, unreadable, malformed, empty (StopIteration), without the task's
    # columns, or whose records lack what the task's templates read (lm-eval renders one as it loads)
    except (TypeError, AttributeError) as exc:  # a key lm-eval's TaskConfig does not take, a !function not found
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{TASKS_DIR / name}.yaml: lm-eval cannot build the task ({excerpt(reason, 200)}); check its "
                          "keys and !function references against lm-eval's task YAML format") from None
    except (OSError, DatasetGenerationError, StopIteration, ValueError, KeyError, jinja2.TemplateError) as exc:
        cause = exc.__cause__ if isinstance(exc, DatasetGenerationError) and exc.__cause__ else exc
        reason = "no records" if isinstance(cause, StopIteration) else " ".join(str(cause).split()) or type(cause).__name__
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise ConfigError(f"task {name!r}: cannot load its data from {source} ({reason}); {fix}") from None
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _quiet_custom_dataset_hint():
    """lm-eval warns, for every generated data set (the toy task's), that ``--metadata`` can pass it
    options; odiag passes them in the YAML, so under odiag the hint is noise."""
    hint = logging.Filter()
    hint.filter = lambda record: "Custom kwargs can be passed" not in record.getMessage()
    logger = logging.getLogger("lm_eval.api.task")
    logger.addFilter(hint)
    try:
        yield
    finally:
        logger.removeFilter(hint)


def _same_path(a: str, b: str) -> bool:
    """Whether two model names are one local directory (or one hub id)."""
    if is_local_path(a) and is_local_path(b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return a == b


class LMEvalTask:
    """A task YAML under ``tasks/``, its data, the student's chat template and the answer checker."""

    def __init__(
        self,
        name: str,
        tokenizer: str | None = None,
        revision: str | None = None,
        data_files: str | None = None,
        thinking: bool | None = None,
        max_new_tokens: int | None = None,
    ):
        if tokenizer is None:
            raise ConfigError(f"task {name!r} needs the student's tokenizer (the student model id or directory)")
        self.name = name
        self._task = build_lm_eval_task(name, data_files)
        cfg = self._task.config
        options = odiag_options(cfg.metadata, cfg.generation_kwargs, f"{TASKS_DIR / name}.yaml")
        self.answer_type, self.n_min = options["answer_type"], options["n_min"]
        self.max_new_tokens = max_new_tokens or options["max_gen_toks"]
        self.thinking = bool(options["thinking"] if thinking is None else thinking)
        self.chat_template_options = {"enable_thinking": self.thinking}
        self._shuffle_seed = options["shuffle_seed"]
        self.student, self.revision = tokenizer, revision
        self.tokenizer = load_tokenizer(tokenizer, revision)
        vocab = self.tokenizer.get_vocab()
        stops = {self.tokenizer.eos_token_id} | {vocab[t] for t in STOP_TOKENS if t in vocab}
        stops |= {vocab[t] for t in cfg.generation_kwargs.get("until", []) if t in vocab}
        self.stop_ids = tuple(sorted(s for s in stops if s is not None))
        self.answer_counts = {"scored": 0, "correct": 0, "unparseable": 0, "truncated": 0}
        self._checked: set[str] = set()
        self._controls: dict[tuple, np.ndarray] = {}  # (teacher, template, question): its context with placeholders
        self._special = np.asarray(sorted(self.tokenizer.all_special_ids), dtype=np.int64)  # the control tokens
        self._texts: dict[int, str] | None = None
        self._questions: dict[int | None, list[Question]] = {}

    # prompts and questions ---------------------------------------------------------------------

    def chat_ids(self, user_text: str, chat_template_options: Mapping | None = None) -> np.ndarray:
        """One user turn under the student's chat template with the generation prompt, as ids."""
        options = {**self.chat_template_options, **(chat_template_options or {})}
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True, **options
        )
        # verbose=False: odiag checks lengths against the model's positions itself, in one line (transformers'
        # note on a text longer than the tokenizer's model_max_length came before it)
        return np.asarray(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=np.int64)

    def _spelt_controls(self, teacher: TeacherConfig, question: Question, ids: np.ndarray) -> str | None:
        """A control token (``<|im_end|>``, ...) that ``ids``, the teacher's context, holds more often than the same
        context with placeholder solutions does: a shown text spelt it out in ordinary tokens, and the chat
        template's tokenisation made it the control token. None when there is none."""
        key = (teacher.name, teacher.context_template, question.id)
        if (bare := self._controls.get(key)) is None:  # once per teacher and question: its paths share the prompt
            bare = self._controls[key] = self.chat_ids(placeholder_context(teacher, question.doc["prompt"], "x"),
                                                       self._teacher_options(teacher))
        return self.spelt_control(ids, bare)

    def spelt_control(self, ids: np.ndarray, bare: np.ndarray) -> str | None:
        """The first control token ``ids`` holds more often than ``bare``, the same chat with placeholders where
        texts were shown (None when none): a shown text spelt it out, and tokenising made it the real one."""
        special = self._special
        more = np.flatnonzero((ids[:, None] == special).sum(axis=0) > (bare[:, None] == special).sum(axis=0))
        return self.tokenizer.convert_ids_to_tokens(int(special[more[0]])) if len(more) else None

    def decode(self, ids: Sequence[int]) -> str:
        """A response's text (special tokens such as the stop id dropped; ``<think>`` tags kept)."""
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=True)

    def _target(self, doc: dict) -> str:
        target = self._task.doc_to_target(doc)
        if isinstance(target, int) and self._task.config.doc_to_choice is not None:
            target = self._task.doc_to_choice(doc)[target]
        return str(target)

    @property
    def n_available(self) -> int:
        """Questions the task has (its evaluation split); ``limit`` takes the first ones."""
        return len(self._task.eval_docs)

    def questions(self, limit: int | None) -> list[Question]:
        """The first ``limit`` questions (all with None), built once per limit: a run checks their prompts
        against its stored rollouts before it opens its directory, then runs them."""
        if limit not in self._questions:
            self._questions[limit] = self._build_questions(limit)
        return list(self._questions[limit])

    def _build_questions(self, limit: int | None) -> list[Question]:
        docs = self._task.eval_docs
        order = np.arange(len(docs))
        if self._shuffle_seed is not None:
            order = np.random.default_rng(self._shuffle_seed).permutation(len(docs))
        out = []
        for i in order[:limit]:
            doc = docs[int(i)]
            text = self._task.doc_to_text(doc)
            out.append(
                Question(
                    id=f"{int(i):05d}",
                    prompt_ids=self.chat_ids(text),
                    doc={"prompt": text, "target": self._target(doc), "index": int(i), "record": doc},
                )
            )
        return out

    # rewards -----------------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"answer_type": self.answer_type, "answer_checker": scoring.VERSION, "stop_ids": list(self.stop_ids)}

    def rewards(self, question: Question, responses: Sequence[np.ndarray], truncated: np.ndarray) -> np.ndarray:
        return (self.outcomes(question, responses, truncated) == CORRECT).astype(np.int64)

    def outcomes(self, question: Question, responses: Sequence[np.ndarray], truncated: np.ndarray) -> np.ndarray:
        n_choices = len(question.doc["record"].get("choices") or ()) or 4
        out = np.full(len(responses), TRUNCATED, dtype=np.int8)
        verdicts: dict[bytes, Verdict] = {}  # targeted rollouts from one prefix often repeat a continuation
        for i, (ids, cut) in enumerate(zip(responses, np.asarray(truncated, dtype=bool), strict=True)):
            self.answer_counts["scored"] += 1
            if cut:  # SPEC §1: a completion cut off at max_new_tokens scores 0 and is counted
                self.answer_counts["truncated"] += 1
                continue
            key = np.asarray(ids, dtype=np.int64).tobytes()
            if (verdict := verdicts.get(key)) is None:
                verdict = verdicts[key] = score(self.decode(ids), question.doc["target"], self.answer_type, n_choices)
            self.answer_counts["unparseable"] += verdict.answer is None
            self.answer_counts["correct"] += verdict.correct
            out[i] = UNPARSEABLE if verdict.answer is None else CORRECT if verdict.correct else WRONG
        return out

    def token_texts(self, ids: np.ndarray) -> list[str]:
        """Each token's text; joined they give the decoded response (byte-level BPE decoded incrementally). An id
        past the tokenizer's last token (a model's output rows are padded beyond it) has none, as in ``decode``."""
        tokens = ["" if t is None else t for t in self.tokenizer.convert_ids_to_tokens([int(t) for t in ids])]
        special = set(self.tokenizer.all_special_tokens) | set(self.tokenizer.added_tokens_encoder)
        table = _byte_decoder()
        byte_level = "ByteLevel" in type(self.tokenizer.backend_tokenizer.decoder).__name__
        if not byte_level:
            return list(tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = []
        for tok in tokens:
            if tok in special or any(c not in table for c in tok):
                out.append(decoder.decode(b"", final=True) + tok)
            else:
                out.append(decoder.decode(bytes(table[c] for c in tok)))
        if out:
            out[-1] += decoder.decode(b"", final=True)
        return out

    # teachers ----------------------------------------------------------------------------------

    def _teacher_options(self, teacher: TeacherConfig) -> dict:
        return {**self.chat_template_options, **teacher.chat_template_options}

    def _limit(self, teacher: TeacherConfig) -> int | None:
        return max_positions(self.student, self.revision) if teacher.is_self else max_positions(teacher.model, teacher.revision)

    def check_teacher(self, teacher: TeacherConfig) -> None:
        """Load-time checks of a teacher against this task and student; ConfigError naming file and key."""
        where = teacher.file or teacher.name
        student_vocab = self.tokenizer.get_vocab()
        keys = model_keys(teacher)
        for model, revision in models_named(teacher).items():
            try:
                vocab = load_tokenizer(model, revision).get_vocab()
            except ConfigError as exc:
                local = "; a path starting ./ or ../ is read from the teacher file's folder" if is_local_path(model) else ""
                raise ConfigError(f"{where}: key {keys[model]!r}: {exc}{local}") from None
            if vocab != student_vocab:
                differ = len(set(vocab.items()) ^ set(student_vocab.items()))
                raise ConfigError(
                    f"{where}: model {model!r} has a different vocabulary from the student {self.student!r} "
                    f"({len(vocab)} vs {len(student_vocab)} tokens, {differ} entries differ); token ids would not match"
                )
        if teacher.is_self:
            for key, value in teacher.chat_template_options.items():
                if key not in self.chat_template_options and (close := difflib.get_close_matches(
                        str(key), list(self.chat_template_options), n=1)):
                    raise ConfigError(f"{where}: key 'chat_template_options': {excerpt(key, 40)} is no option of the "
                                      f"student's prompt; did you mean {close[0]!r}?")
                if self.chat_template_options.get(key, None) != value:
                    raise ConfigError(
                        f"{where}: key 'chat_template_options': {key}={value!r} but the student's prompt uses "
                        f"{key}={self.chat_template_options.get(key)!r} (task {self.name}); a self-teacher must read the "
                        "response under the student's own chat template, or its log-probs are silently biased"
                    )
        question = self._task.doc_to_text(self._task.eval_docs[0])
        student_ids = self.chat_ids(question)
        context_ids = self.chat_ids(placeholder_context(teacher, question, "x"), self._teacher_options(teacher))
        suffix = self._generation_suffix(self.chat_template_options)
        if teacher.is_self and not (
            len(context_ids) >= len(suffix) and np.array_equal(context_ids[len(context_ids) - len(suffix) :], suffix)
            and np.array_equal(student_ids[len(student_ids) - len(suffix) :], suffix)
        ):
            raise ConfigError(
                f"{where}: key 'context_template': the teacher's context does not end with the student's generation "
                f"prompt {self.tokenizer.decode(suffix)!r}; the response would follow a different template"
            )
        same_model = teacher.is_self or (_same_path(teacher.model, self.student) and teacher.revision == self.revision)
        if same_model and np.array_equal(context_ids, student_ids):
            raise ConfigError(f"{where}: this teacher is the student itself, reading the student's own prompt (its context "
                              f"and chat options give the same tokens on task {self.name}): its distillation gradient is "
                              "zero at every token; give it a context (context_template, correct_solutions, "
                              "wrong_solutions) or another model")
        limit = self._limit(teacher)
        shortest = len(self.chat_ids(placeholder_context(teacher, "", ""), self._teacher_options(teacher)))
        if limit is not None and self.max_new_tokens >= limit:  # the length alone: no context could fit
            raise ConfigError(
                f"max_new_tokens {self.max_new_tokens} (the response length limit: --set max_new_tokens, or lm-eval's "
                f"--gen_kwargs max_gen_toks) is not below the {limit} positions of teacher {teacher.name}'s model: "
                f"lower it to at most {limit - shortest} (its context takes {shortest})"
            )
        if limit is not None and shortest + self.max_new_tokens > limit:
            raise ConfigError(
                f"{where}: key 'context_template': the context alone is {shortest} tokens, and with up to "
                f"{self.max_new_tokens} response tokens it exceeds the model's {limit} positions (it would be truncated)"
            )
        self._checked.add(teacher.name)

    def _generation_suffix(self, options: Mapping) -> np.ndarray:
        """The ids the chat template puts between a user turn and the response."""
        messages = [{"role": "user", "content": "x"}]
        with_prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **options)
        without = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **options)
        if not with_prompt.startswith(without):
            raise ConfigError(f"the chat template of {self.student!r} does not extend a conversation with its generation prompt")
        return np.asarray(self.tokenizer(with_prompt[len(without) :], add_special_tokens=False, verbose=False)["input_ids"],
                          dtype=np.int64)

    def teacher_context(
        self,
        teacher: TeacherConfig,
        question: Question,
        correct: Sequence[np.ndarray],
        wrong: Sequence[np.ndarray],
        artefacts: Artefacts | None = None,
        response_length: int | None = None,
    ) -> np.ndarray | Skip:
        """The teacher's context ids before the student's response, or why it is skipped here.

        ``correct`` / ``wrong`` are the student's own responses (never the scored path), used when the
        teacher's solution_source is the student; solutions from a named model and model summaries
        come from ``artefacts`` (:func:`harness.teachers.build_artefacts`). ``response_length``
        (default: the task's ``max_new_tokens``) is how many response tokens will follow the context.
        """
        if teacher.name not in self._checked:
            self.check_teacher(teacher)
        if teacher.solution_source == STUDENT:  # the student's own responses, as text
            correct = [self.decode(x) for x in correct[: teacher.correct_solutions]]
            wrong = [self.decode(x) for x in wrong[: teacher.wrong_solutions]]
        text, why = context_or_skip(teacher, question.id, question.doc["prompt"], correct, wrong, artefacts)
        if text is None:
            return Skip(why)
        ids = self.chat_ids(text, self._teacher_options(teacher))
        if (spelt := self._spelt_controls(teacher, question, ids)) is not None:
            return Skip(f"a solution it shows spells the control token {spelt!r}, which would end or open a turn "
                        "of the teacher's chat; skipped rather than shown otherwise than its file says")
        follow = self.max_new_tokens if response_length is None else response_length
        limit = self._limit(teacher)
        if limit is not None and len(ids) + follow > limit:
            return Skip(f"context of {len(ids)} tokens + {follow} response tokens exceeds the model's {limit} positions")
        return ids


# the YAMLs' !function helpers (tasks/odiag_utils.py re-exports these) -------------------------------


def boolq_docs(dataset):
    """SuperGLUE BoolQ as the hub has it: ``passage`` is "<title> -- <passage>", ``label`` 0/1."""
    if "label" in dataset.column_names:
        return dataset

    def convert(doc):
        return {"passage": f"{doc['title']} -- {doc['passage']}", "label": int(bool(doc["answer"]))}

    return dataset.map(convert, remove_columns=["title", "answer"])


def mmlu_docs(dataset):
    """MMLU as ``cais/mmlu`` has it: ``answer`` is the index 0-3 of the right choice."""
    if "answer_index" not in dataset.column_names:
        return dataset
    return dataset.map(lambda doc: {"answer": int(doc["answer_index"])}, remove_columns=["answer_index"])


def aime_docs(dataset):
    """AIME as ``math-ai/aime25`` has it: ``problem`` and ``answer`` as a string."""
    return dataset.map(lambda doc: {"answer": str(doc["answer"]).strip()})


def lm_eval_result(answer_type: str, doc: dict, target: str, results: Sequence[str]) -> dict[str, int]:
    """lm-eval ``process_results``: exact match under odiag's answer extraction."""
    return {"exact_match": int(score(results[0], target, answer_type, len(doc.get("choices") or ()) or 4).correct)}
